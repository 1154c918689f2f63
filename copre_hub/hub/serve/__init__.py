"""``copre-hub serve``: a self-hosted, Hub-compatible endpoint for federations that cannot use the public Hub.

Unmodified ``huggingface_hub`` and ``timm.create_model("hf-hub:org/name", pretrained=True)`` work against it through
``HF_ENDPOINT``. ``storage`` keeps repositories on disk with atomic commits, ``commit_body`` reads uploads, ``app``
speaks the HTTP protocol, ``server`` runs it on uvicorn, ``stock`` fills it with the published repositories
(``--with-published``).
"""
