"""edgeveil gateway: receives sealed frames from sensor nodes, verifies and anonymises them at
the edge, and forwards what may leave over MQTT. The `edgeveil` command lives in gateway.cli."""

__version__ = "0.1.0"
__all__ = ["__version__"]
