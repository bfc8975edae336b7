// Package e2e holds tcpshadow's end-to-end tests: the real binary, as
// intercept agent and copy daemon, in a sealed namespace lab (package lab)
// with real servers in prod and shadow. The tests need root; they skip
// otherwise. Scenario numbers refer to tcpstate/SCENARIOS.md.
package e2e
