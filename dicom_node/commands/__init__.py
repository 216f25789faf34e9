"""Bodies of the ``egfr-node`` commands that drive more than a function call (models, import,
demo); ``dicom_node.cli`` parses and dispatches."""
