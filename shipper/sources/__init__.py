"""Sources: listeners that frame and decode what senders send and hand events to the pipeline."""
