"""gRPC plumbing shared by every layer.

Client channels with deadlines and retries, and the status-code table.

It sits at the bottom, below castore, so the castore and Nix-layer clients and
the servers in ``cafs.grpc`` all import it downwards.
"""
