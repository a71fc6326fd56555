// Command healthd probes every instance over HTTP or TCP, shards the work
// across the live checkers, and publishes health on NATS.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
