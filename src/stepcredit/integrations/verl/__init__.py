"""verl integration: the stepcredit_* advantage estimators (``estimators``), the v1 trainer mode
``stepcredit`` (``trainer``), the verl-agent layout (``agent``) and the ``verl.plugins`` entry point
(``plugin``). Importing this package imports nothing of verl."""
