"""The XDP program type as every engine, the checker and the generator model it.

A scenario of type "xdp" (:data:`bpfdiff.scenario.PROG_XDP`, the default) runs
each program as ``BPF_PROG_TEST_RUN`` runs a ``BPF_PROG_TYPE_XDP`` program
(kernel 6.1, ``net/bpf/test_run.c`` ``bpf_prog_test_run_xdp``):

* R1 points at a ``struct xdp_md`` (``include/uapi/linux/bpf.h``), six u32
  fields, read-only for the program;
* the run's bytes are the packet: ``data`` points at its first byte,
  ``data_end`` one past its last, ``data_meta`` equals ``data`` (no metadata:
  ``xdp_prepare_buff(..., meta_valid=true)``); before ``data`` lies
  ``XDP_PACKET_HEADROOM`` bytes of headroom;
* ``ingress_ifindex`` is the loopback device's (the test run's rx queue is
  ``loopback_dev``'s queue 0), ``rx_queue_index`` 0; ``egress_ifindex`` may
  only be read by ``BPF_XDP_DEVMAP`` programs (``xdp_is_valid_access``);
* R2-R5 are not initialised (the verifier refuses reading them);
* the result is the u32 ``retval`` and ``data_out``: the packet after the run
  (``data_meta .. data_end``).

Context accesses (``net/core/filter.c``): ``xdp_is_valid_access`` allows reads
only (writes only to ``rx_queue_index`` of device-bound programs, which
bpfdiff never loads), exactly 4 bytes, aligned, inside the struct; loads of
``data``/``data_end``/``data_meta`` give packet pointers.  The verifier then
rewrites each access to the kernel's ``struct xdp_buff``
(``xdp_convert_ctx_access``): that layout is per kernel version, in
:class:`bpfdiff.profiles.XdpLayout`.

Packet accesses (``kernel/bpf/verifier.c``): a packet pointer may be
dereferenced only within the range a comparison against ``data_end`` proved
(``find_good_pkt_pointers``: after ``r2 = data + N; if r2 > data_end goto``
the fall-through may touch ``[data, data + N)``).
"""

from __future__ import annotations

# struct xdp_md (uapi, the same on every kernel that has the field)
XDP_MD_DATA = 0
XDP_MD_DATA_END = 4
XDP_MD_DATA_META = 8
XDP_MD_INGRESS_IFINDEX = 12
XDP_MD_RX_QUEUE_INDEX = 16
XDP_MD_EGRESS_IFINDEX = 20      # v5.8+; readable only by BPF_XDP_DEVMAP programs
XDP_MD_SIZE = 24
XDP_MD_FIELD_SIZE = 4
XDP_MD_FIELDS = {
    XDP_MD_DATA: "data", XDP_MD_DATA_END: "data_end", XDP_MD_DATA_META: "data_meta",
    XDP_MD_INGRESS_IFINDEX: "ingress_ifindex", XDP_MD_RX_QUEUE_INDEX: "rx_queue_index",
    XDP_MD_EGRESS_IFINDEX: "egress_ifindex",
}
# Fields a loaded (non-devmap) XDP program may read, and what the load gives.
PACKET_POINTER_FIELDS = {XDP_MD_DATA: "pkt", XDP_MD_DATA_END: "pkt_end", XDP_MD_DATA_META: "pkt_meta"}
READABLE_FIELDS = frozenset({XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_DATA_META, XDP_MD_INGRESS_IFINDEX,
                             XDP_MD_RX_QUEUE_INDEX})

# net/bpf/test_run.c (bpf_prog_test_run_xdp, 6.1)
XDP_PACKET_HEADROOM = 256       # include/uapi/linux/bpf.h
ETH_HLEN = 14                   # the smallest packet a run takes (include/uapi/linux/if_ether.h)
PAGE_SIZE = 4096
# SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86-64: 48 bytes of header
# and MAX_SKB_FRAGS (17) frags of 16 bytes = 320, already a multiple of 64.
SKB_SHARED_INFO_TAILROOM = 320
# max_data_sz = 4096 - headroom - tailroom: the linear part a program sees.  A
# longer data_in is split into fragments the program cannot reach directly,
# so bpfdiff refuses such runs as bad input.
XDP_MAX_PACKET = PAGE_SIZE - XDP_PACKET_HEADROOM - SKB_SHARED_INFO_TAILROOM
LOOPBACK_IFINDEX = 1            # include/net/flow.h LOOPBACK_IFINDEX
RX_QUEUE_INDEX = 0


def packet_length_error(length: int) -> str | None:
    """Why a run's packet of ``length`` bytes is not one the XDP test run takes (None: it is)."""
    if length < ETH_HLEN:
        return f"an XDP packet needs at least ETH_HLEN ({ETH_HLEN}) bytes, this one has {length}"
    if length > XDP_MAX_PACKET:
        return f"an XDP packet is at most {XDP_MAX_PACKET} bytes (the test run's linear part), this one has {length}"
    return None


def xdp_md_scalar(off: int) -> int | None:
    """The value of a scalar ``xdp_md`` field in a test run (None: not a readable scalar field)."""
    return {XDP_MD_INGRESS_IFINDEX: LOOPBACK_IFINDEX, XDP_MD_RX_QUEUE_INDEX: RX_QUEUE_INDEX}.get(off)


__all__ = [
    "ETH_HLEN", "LOOPBACK_IFINDEX", "PACKET_POINTER_FIELDS", "READABLE_FIELDS", "RX_QUEUE_INDEX",
    "XDP_MAX_PACKET", "XDP_MD_DATA", "XDP_MD_DATA_END", "XDP_MD_DATA_META", "XDP_MD_EGRESS_IFINDEX",
    "XDP_MD_FIELDS", "XDP_MD_FIELD_SIZE", "XDP_MD_INGRESS_IFINDEX", "XDP_MD_RX_QUEUE_INDEX", "XDP_MD_SIZE",
    "XDP_PACKET_HEADROOM", "packet_length_error", "xdp_md_scalar",
]
