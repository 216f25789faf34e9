"""The bodies of the ``egfr-node`` commands, one module a command family. Each registers its
parser (``register(sub)``) with the function to run; ``dicom_node.cli`` only parses and
dispatches. Imported whenever ``egfr-node`` runs, so nothing here imports torch, SimpleITK
or training at module level: each body imports what it needs."""
