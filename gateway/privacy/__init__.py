"""The privacy stage: decides what of a verified message may leave the gateway, and in what form.

Nothing personal crosses this stage (ARCHITECTURE.md): what comes out are Records, and only
Records reach the spool, the logs' payload-free lines and MQTT.
"""

from .passthrough import DefaultPolicy, PrivacyStage, scaled

__all__ = ["DefaultPolicy", "PrivacyStage", "scaled"]
