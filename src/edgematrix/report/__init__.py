"""Reports: JUnit per cell (junitparser) and the markdown summary."""
