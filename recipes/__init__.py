"""YAML recipes and the runner / CLI that chains the stages."""
