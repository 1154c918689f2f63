"""copre-flower-app: downstream FedAvg from a copre-hub initialization, as a Flower App."""
