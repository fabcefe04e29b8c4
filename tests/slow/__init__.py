"""Files whose every test is marked slow: demos, benchmark scripts, multi-process scans."""
