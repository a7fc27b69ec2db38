# A re-key from the gateway (a configuration update with key_epoch, SPEC.md section 7.7):
# fresh keys of a higher epoch, taken once no frame sealed under the current keys waits for its
# ack, because the gateway refuses the old keys after the switch. A module of its own, loaded
# only while a re-key is handled: a node spends no heap on it the rest of its life.

from protocol import NodeKeys

_EV_CONFIG_APPLIED = 4
_EV_CONFIG_REJECTED = 5


def step(node, update):
    """A re-key `update` just received, or None: switch to the one accepted before."""
    if update is None:
        _switch(node)
    else:
        _request(node, update)


def _request(node, update):
    """Accept the re-key `update` for later (node._rekey), or refuse it."""
    epoch = update.settings["key_epoch"]
    if len(update.settings) > 1 or epoch <= node.keys.epoch:
        node.send_event(_EV_CONFIG_REJECTED, update.version)
        return
    node._rekey = update


def _switch(node):
    """Move to the accepted re-key's epoch."""
    update, node._rekey = node._rekey, None
    epoch = update.settings["key_epoch"]
    # persisted first: a power cut after this resumes under the new keys at counter 0, one
    # before it under the old keys where they were; never an old counter again
    counter = node.counter
    counter.persist(0, epoch)  # limit 0: the first take() reserves under the new epoch
    counter.epoch = epoch
    counter.next_value = 0
    node.keys = NodeKeys(node.keys.node_id, node._secret, None, epoch)
    node.link.rekey(node.keys)
    node.send_event(_EV_CONFIG_APPLIED, update.version)
