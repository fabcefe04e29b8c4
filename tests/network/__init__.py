"""Files whose every test is marked network: they fetch from PyPI."""
