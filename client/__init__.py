"""The hospital side: site workspace, selection, correction queue, local fine-tuning."""
