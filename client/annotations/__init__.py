"""Annotation exchange with pathologists' tools: QuPath GeoJSON, ASAP XML and PNG masks, in level-0 pixels."""
