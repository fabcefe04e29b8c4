"""Views that only render: circuitsvis views of tokens and activations (``viz``) and matplotlib
figures (``figures``). Nothing here runs a model."""
