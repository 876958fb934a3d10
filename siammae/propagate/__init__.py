"""Label propagation with a frozen encoder, for any task: the protocol (:mod:`.protocol`, torch-free),
features (:mod:`.features`), one step (:mod:`.affinity`), the loop over a video (:mod:`.loop`), many
videos at once (:mod:`.parallel`), and token diagnostics (:mod:`.diagnostics`). It knows no dataset:
the tasks (:mod:`siammae.tasks`) give the first frame's labels and take the rest.

``accelerate launch -m siammae.propagate --davis ...`` runs ``siammae propagate`` in every launched
process.
"""
