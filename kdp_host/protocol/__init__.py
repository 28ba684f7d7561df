"""The kubelet's Device Plugin API v1beta1, on public seams of grpclib and betterproto2.

- `wire`: the hand-written protobuf encoding of the messages on the kubelet's hot paths;
- `codec`: grpclib's codec for the plugin server, routing those messages through `wire`;
- `service`: the DevicePlugin service of one resource (ListAndWatch, Allocate, ...);
- `server`: the gRPC server that carries it on a Unix socket (and the one grpclib workaround);
- `registration`: Register with the kubelet.

The generated messages and service base classes stay in `kdp_host.api` (`make protos`).
"""
