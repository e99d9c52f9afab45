"""Example tasks for ``aiotrain train`` (``task: examples.digits:build``)."""
