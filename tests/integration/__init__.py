"""The sklens command, whole studies, run directories, reports, and the package as shipped."""
