"""What runs inside one trial: data with groups, the model size ladder, objectives, the loop."""
