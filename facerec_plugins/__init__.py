"""facerec's built-in plugins, registered through the `facerec` entry points like any third-party plugin."""
