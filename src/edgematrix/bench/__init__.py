"""Cell benchmark: runs a cell end to end and writes pytest-benchmark JSON, JUnit and the report."""
