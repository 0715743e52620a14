"""Sub-commands of the ``rcreg`` command line (see rcreg.cli)."""
