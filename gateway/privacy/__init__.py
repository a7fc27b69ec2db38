"""The privacy stage: decides what of a verified message may leave the gateway, and in what form.

Nothing personal crosses this stage (ARCHITECTURE.md): what comes out are Records, and only
Records reach the spool, the logs' payload-free lines and MQTT. The stage is a PolicyEngine
(engine.py) driven by a declarative policy (policy.py); its parts are pure functions and
explicit, bounded state: pseudonyms.py (rotating keys in RAM), windows.py (window buckets),
dp.py (noise), ledger.py (the privacy budget on disk) and passthrough.py (the "pass" action).
"""

from .engine import PolicyEngine, PrivacyStage, reveals_presence
from .ledger import PrivacyLedger
from .passthrough import scaled

__all__ = ["PolicyEngine", "PrivacyLedger", "PrivacyStage", "reveals_presence", "scaled"]
