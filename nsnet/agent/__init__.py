"""The node agent: sampling over time (sampler, events), dependency edges and their history
(edges, store, history), Prometheus metrics, the HTTP agent (serve) and the live view (watch).

Everything here is built from nsnet.options objects and a Scanner (a Snapshotter on a node, a
fixed one in tests), so it runs in-process as well as from the command line.
"""
