package hapodctl

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func newHistoryCommand(o *options) *cobra.Command {
	var limit int
	var groupLabel string
	cmd := &cobra.Command{
		Use:   "history GROUP",
		Short: "The group's last promotions (status.history, newest first) and the controller's Events about its pods",
		Long: "history prints status.history, the group's last promotions, newest first, and beneath them\n" +
			"the controller's Events (Promoted, PromotedNotAcked, LeaseLapsed, Demoted, SwitchStuck,\n" +
			"CriticalContainerDied, NoStandbyReady) about a pod the history names or one labelled\n" +
			"<group-label>=GROUP now. Events expire (the API server keeps them an hour by default).",
		Example: "  kubectl hapod history web\n" +
			"  kubectl hapod history web --limit 3 --group-label app.kubernetes.io/name",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit must be 0 (all) or more, not %d", limit)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			g, err := getGroup(ctx, c, ns, args[0])
			if err != nil {
				return err
			}
			var pods corev1.PodList
			if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{groupLabel: g.Name}); err != nil {
				return fmt.Errorf("list the group's pods: %w", err)
			}
			var evs eventsv1.EventList
			if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
				return fmt.Errorf("list events: %w", err)
			}
			names := make([]string, 0, len(pods.Items))
			for _, p := range pods.Items {
				names = append(names, p.Name)
			}
			now := time.Now()
			out := o.streams.Out
			fmt.Fprintf(out, "Promotions of hagroup/%s, newest first:\n", g.Name)
			if rows := historyRows(promotions(&g.Status), now, limit); len(rows) == 0 {
				fmt.Fprintf(out, "  %s\n", none)
			} else if err := writeTable(indent(out), historyHeader(), rows); err != nil {
				return err
			}
			fmt.Fprintln(out)
			fmt.Fprintln(out, "Events of its pods, newest first:")
			if rows := eventRows(groupEvents(evs.Items, groupPods(g, names), limit), now); len(rows) == 0 {
				fmt.Fprintf(out, "  %s\n", none)
			} else if err := writeTable(indent(out), eventHeader(), rows); err != nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 10, "at most this many promotions and events (0: all)")
	cmd.Flags().StringVar(&groupLabel, "group-label", "app", "the label whose value names a pod's group (the controller's -group-label)")
	return cmd
}
