"""Stage 3, a model input -> the answer: the ResNet-50 network, the model bundle (manifest
and fold weights), the fold ensemble's inference and the aggregation of slice and fold
scores into a patient probability and status. The only torch importers on the node side."""
