package hapodctl

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// newPauseCommand is pause (paused true) or resume (false).
func newPauseCommand(o *options, paused bool) *cobra.Command {
	use, short, done := "resume GROUP", "Resume automatic failover and switchover of a paused HAGroup", "resumed"
	if paused {
		use, short, done = "pause GROUP", "Pause automatic failover, switchover and deletion: the active stays active, a dead one is not replaced", "paused"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			g, err := getGroup(cmd.Context(), c, ns, args[0])
			if err != nil {
				return err
			}
			if g.Spec.Paused == paused {
				fmt.Fprintf(o.streams.Out, "hagroup/%s already %s\n", g.Name, done)
				return nil
			}
			patch := fmt.Appendf(nil, `{"spec":{"paused":%t}}`, paused)
			if err := c.Patch(cmd.Context(), g, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldManager)); err != nil {
				return explain(err)
			}
			fmt.Fprintf(o.streams.Out, "hagroup/%s %s\n", g.Name, done)
			return nil
		},
	}
}
