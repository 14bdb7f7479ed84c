"""The gRPC endpoint: the servicer, how calls take and give back places, what ends
them, and the server and its processes around it."""
