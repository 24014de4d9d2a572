"""Tables and figures of the tuned comparison, read from stored runs and studies only."""
