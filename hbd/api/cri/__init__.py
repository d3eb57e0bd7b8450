"""The Kubernetes CRI v1 service: gRPC routers over the pod service."""
