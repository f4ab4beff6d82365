"""Config fragments shared by tests: one site, one PCI retention policy."""

SITE_AND_POLICY = """
[[sites]]
id = "tokyo-1"
name = "Tokyo DC1"
timezone = "Asia/Tokyo"

[[retention_policies]]
id = "pci"
days = 90
min_days = 90
max_days = 365
"""
