"""Distribution: model ids, checkpoint folders, model cards, the Hub client and the ``serve`` endpoint.

``ids`` (what an id names; the published registry), ``checkpoint`` (write, verify and load a folder), ``cards``
(model cards), ``api`` (load, pull, push, list_models, info), ``serve`` (the Hub-compatible endpoint), ``cli`` (the
hub verbs). Nothing heavy is imported here.
"""
