"""Model loading, DPO / RLAIF trainers and the shipped accelerate / DeepSpeed configs."""
