"""The built-in checks, one module per domain. Importing a module registers its checks."""
