"""The archive wing: what enters the node by any door (C-STORE, STOW-RS, C-GET, WADO-RS,
``egfr-node import``, the node's own results) is checked whole, archived durably and recorded
here, with one set of promises (``accept``, ``intake``, ``archive``, ``header``)."""
