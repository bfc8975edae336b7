// Package daemon assembles tcpshadow's two daemons from their
// configurations and runs them until their context ends: the copy daemon
// (RunCopy: capture or a mirror session → tcpstate engine → raw or
// datalink sockets, with the control channel's client) and the intercept
// agent (RunAgent: capture → relay to the copy daemons; on the shadow
// itself, with Local set, an NFQUEUE its nftables rules fill, installed at
// start and removed at exit: package divert); and a replay of capture
// files through the copy daemon's engine (RunReplay: package replay's
// player → the engine built from a CopyConfig). It is what etcd's
// server/embed is to etcd: the CLI
// fills a config, this package runs it.
//
// It owns what concerns the process rather than the packets: each default
// of a daemon's configuration (DefaultCopyConfig, DefaultAgentConfig), its
// validation, the CPU and memory budgets and the engine budgets derived
// from them (CopyConfig.EngineConfig), the order things are opened and
// closed in (tearing down what it opened when a later step fails),
// readiness, stopping and the watchdog for systemd (sd_notify), reopening the log and
// dump files on SIGHUP, the pcap dump's wiring and the metrics each daemon
// exports.
//
// It must not parse flags or files, nor know their names: a validation
// error is a *FieldError naming a config field ("Engine.MSS"), which the
// CLI maps back to the flag or file key that set it. It holds no packet
// logic: that is tcpstate's, intercept's and capture's.
package daemon
