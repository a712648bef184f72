"""rtlab's built-in plugins. Each module is registered through the same path as a third-party plugin."""
