// Package deploy holds what operators deploy beside Berth's daemons: the
// Prometheus alerting rules and their promtool unit tests (prometheus/),
// and the Grafana dashboard (grafana/). It has no Go code of its own; its
// tests check that the rules and the dashboard name only metrics and
// labels that the daemons register, that every alert is complete and
// unit-tested both ways, and that its runbook exists in docs/operations.md.
package deploy
