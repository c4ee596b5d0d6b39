"""Data sources (toy world, JSONL/COCO readers), candidate sampling and preference-pair building."""
