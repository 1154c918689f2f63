"""Distribution: model ids, checkpoint folders, model cards, the Hub client and the ``serve`` endpoint."""
