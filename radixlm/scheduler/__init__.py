"""Request scheduling: requests, batches, admission policy and the step loop."""
