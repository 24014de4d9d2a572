"""What an update costs: FLOPs at full size, full-size architectures and their configs, step and run timing, the drift benchmark and the ranking economies' agreement."""
