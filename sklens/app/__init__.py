"""The application on top of the library: named tasks (``tasks``), a whole study into a run
directory (``study``, ``rundir``), its HTML report (``report``) and the ``sklens`` command
(``cli``). Nothing in the library imports from here."""
