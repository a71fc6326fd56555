package main

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/berthhq/berth/common/bus"
)

// natsKeyCmd rotates NATS keys (docs/operations.md, Rotating NATS keys).
type natsKeyCmd struct {
	Ls      natsKeyLsCmd   `cmd:"" help:"List every key: its role or lbagent node, its state (active, next, retiring), its public key and file."`
	Rotate  natsKeyStepCmd `cmd:"" help:"Rotation step 1: create the role's (or --node's) next key, which NATS accepts and every credential trusts beside the active one."`
	Promote natsKeyStepCmd `cmd:"" help:"Rotation step 2: the next key becomes the active one, which the role's credential now carries; the previous one stays accepted and trusted until retire."`
	Retire  natsKeyStepCmd `cmd:"" help:"Rotation step 3: delete the previous key: NATS refuses it and no credential trusts it any more."`
	Abort   natsKeyStepCmd `cmd:"" help:"Delete a next key that was never promoted."`
	AddNode natsKeyRmCmd   `cmd:"" name:"add-node" help:"Create an lbagent node's own key unless it has one, without printing it (nats-credential lbagent --node prints it): for a file copied to the node as it is, nodes/<node>.nk."`
	RmNode  natsKeyRmCmd   `cmd:"" name:"rm-node" help:"Delete every key of an lbagent node: NATS refuses it, readers distrust it, the next certificate put is not sealed to it."`
}

type natsKeyLsCmd struct {
	natsAuthFlags `embed:""`
}

type natsKeyStepCmd struct {
	natsAuthFlags `embed:""`
	Role          string `arg:"" help:"scheduler, healthd, lbagent or reader." enum:"scheduler,healthd,lbagent,reader"`
	Node          string `help:"With lbagent: the key of this node, not the role's shared one." default:""`
}

type natsKeyRmCmd struct {
	natsAuthFlags `embed:""`
	Node          string `arg:"" help:"The lbagent node."`
}

// natsKey runs one nats-key command (command is kong's, less "nats-key ").
func natsKey(c *natsKeyCmd, command string, stdout, stderr *os.File) int {
	var (
		creds *bus.Credentials
		err   error
		next  string
	)
	switch command {
	case "ls":
		creds, err = bus.OpenCredentials(credentialsDir(c.Ls.DataDir))
	case "rotate <role>":
		s := c.Rotate
		creds, err = bus.RotateKey(credentialsDir(s.DataDir), s.Role, s.Node)
		next = rotateNext(s.Role, s.Node)
	case "promote <role>":
		s := c.Promote
		creds, err = bus.PromoteKey(credentialsDir(s.DataDir), s.Role, s.Node)
		next = promoteNext(s.Role, s.Node)
	case "retire <role>":
		s := c.Retire
		creds, err = bus.RetireKey(credentialsDir(s.DataDir), s.Role, s.Node)
		next = retireNext(s.Role, s.Node)
	case "abort <role>":
		s := c.Abort
		creds, err = bus.AbortRotation(credentialsDir(s.DataDir), s.Role, s.Node)
		next = "The rotation is abandoned; " + externalNATS + "."
	case "add-node <node>":
		creds, err = bus.AddNode(credentialsDir(c.AddNode.DataDir), c.AddNode.Node)
		next = "The scheduler with the embedded NATS accepts the node's key, and publishes it in the node-key directory, within 2 s; " +
			externalNATS + ". Copy the node's file (nodes/" + c.AddNode.Node + ".nk, mode 0600) to that node only, for its lbagent's --nats-nkey."
	case "rm-node <node>":
		creds, err = bus.RemoveNode(credentialsDir(c.RmNode.DataDir), c.RmNode.Node)
		next = "The scheduler with the embedded NATS closes the node's connection and removes it from the node-key directory within 2 s; " +
			externalNATS + ". Readers then distrust its seals and the next certificate put is not sealed to it. " +
			"It can still read the certificate keys it was given before: if it was compromised, order every certificate again (docs/operations.md, Rotating NATS keys)."
	default:
		fmt.Fprintf(stderr, "scheduler: nats-key %s: unknown command\n", command)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		if errors.Is(err, bus.ErrRotation) {
			return exitUsage
		}
		return exitFailed
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "OWNER\tSTATE\tPUBLIC KEY\tFILE")
	for _, k := range creds.Keys() {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.Owner(), k.State, k.Public, k.Path)
	}
	_ = w.Flush()
	if next != "" {
		fmt.Fprintf(stderr, "scheduler: %s\n", next)
	}
	return exitOK
}

// externalNATS is what an external NATS needs after each step.
const externalNATS = "with an external NATS, print its config again (scheduler nats-config) and reload nats-server (nats-server --signal reload)"

// credentialOf is the command that prints role's (or node's) credential.
func credentialOf(role, node string) string {
	if node != "" {
		return "scheduler nats-credential lbagent --node " + node
	}
	return "scheduler nats-credential " + role
}

func rotateNext(role, node string) string {
	if node != "" {
		return fmt.Sprintf("Step 1 of 3. The scheduler with the embedded NATS accepts the next key, and publishes it in the node-key directory, within 2 s; %s. "+
			"No other daemon needs a new credential. Next: scheduler nats-key promote lbagent --node %s", externalNATS, node)
	}
	return fmt.Sprintf("Step 1 of 3. The scheduler with the embedded NATS accepts the next key within 2 s; %s. "+
		"Next: print every daemon's credential again (scheduler nats-credential <role>, and --node for each node's own key), "+
		"restart the daemons one at a time with them, so that each trusts both keys; then: scheduler nats-key promote %s", externalNATS, role)
}

func promoteNext(role, node string) string {
	wait := "one --resync (30 s by default)"
	if node != "" {
		wait = "20 s (lbagent writes its record every 10 s)"
	} else if role == bus.RoleLBAgent || role == bus.RoleReader {
		wait = "until they are all restarted"
	}
	return fmt.Sprintf("Step 2 of 3. %s now prints the new key: restart every daemon that uses it, one at a time, with the credential it prints. "+
		"Wait %s after the last one, so that every record is sealed with the new key; then: scheduler nats-key retire %s%s",
		credentialOf(role, node), wait, role, nodeFlag(node))
}

func retireNext(role, node string) string {
	if node != "" {
		return fmt.Sprintf("Step 3 of 3. The scheduler with the embedded NATS refuses the old key, and drops it from the node-key directory, within 2 s; %s.", externalNATS)
	}
	return fmt.Sprintf("Step 3 of 3. The scheduler with the embedded NATS refuses the old key within 2 s; %s. "+
		"Print every daemon's credential again and restart the daemons one at a time, so that none trusts the old key any more.", externalNATS)
}

func nodeFlag(node string) string {
	if node == "" {
		return ""
	}
	return " --node " + node
}
