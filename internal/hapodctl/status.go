package hapodctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
)

func newStatusCommand(o *options) *cobra.Command {
	var allNamespaces bool
	var output string
	cmd := &cobra.Command{
		Use:   "status [GROUP]",
		Short: "List the HAGroups, or show one: active, standbys and why not eligible, conditions, last failover, switchover",
		Example: "  kubectl hapod status -A\n" +
			"  kubectl hapod status web -n shop\n" +
			"  kubectl hapod status web -o yaml",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			printer, err := objectPrinter(output)
			if err != nil {
				return err
			}
			if len(args) == 1 && allNamespaces {
				return errors.New("a GROUP and --all-namespaces do not go together: a group is in one namespace (-n)")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ns, err := o.namespace()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				return o.statusOne(cmd.Context(), c, ns, args[0], printer)
			}
			return o.statusList(cmd.Context(), c, ns, allNamespaces, printer)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "list the HAGroups of every namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "", "print the HAGroup object(s) instead: json or yaml")
	return cmd
}

// objectPrinter is the printer of -o, nil for the plugin's own text.
// Managed fields are left out, as kubectl get does by default.
func objectPrinter(output string) (printers.ResourcePrinter, error) {
	switch output {
	case "":
		return nil, nil
	case "json":
		return &printers.OmitManagedFieldsPrinter{Delegate: &printers.JSONPrinter{}}, nil
	case "yaml":
		return &printers.OmitManagedFieldsPrinter{Delegate: &printers.YAMLPrinter{}}, nil
	default:
		return nil, fmt.Errorf("unknown output format %q: want json or yaml", output)
	}
}

func (o *options) statusOne(ctx context.Context, c client.Client, ns, name string, printer printers.ResourcePrinter) error {
	g, err := getGroup(ctx, c, ns, name)
	if err != nil {
		return err
	}
	if printer != nil {
		return printObject(o.streams.Out, printer, g)
	}
	_, err = io.WriteString(o.streams.Out, describe(g, time.Now()))
	return err
}

func (o *options) statusList(ctx context.Context, c client.Client, ns string, allNamespaces bool, printer printers.ResourcePrinter) error {
	var list v1alpha1.HAGroupList
	var opts []client.ListOption
	if !allNamespaces {
		opts = append(opts, client.InNamespace(ns))
	}
	if err := c.List(ctx, &list, opts...); err != nil {
		return explain(err)
	}
	if printer != nil {
		return printObject(o.streams.Out, printer, &list)
	}
	if len(list.Items) == 0 {
		// To stderr, as kubectl get: stdout stays a table (empty) for a script.
		if allNamespaces {
			fmt.Fprintln(o.streams.ErrOut, "No HAGroups found.")
		} else {
			fmt.Fprintf(o.streams.ErrOut, "No HAGroups found in namespace %s.\n", ns)
		}
		return nil
	}
	now := time.Now()
	rows := make([][]string, 0, len(list.Items))
	for i := range list.Items {
		rows = append(rows, listRow(&list.Items[i], now, allNamespaces))
	}
	return writeTable(o.streams.Out, listHeader(allNamespaces), rows)
}

// printObject prints an HAGroup or HAGroupList with its apiVersion and kind,
// which the client's typed decoding leaves empty and the printers require.
func printObject(w io.Writer, p printers.ResourcePrinter, obj runtime.Object) error {
	switch obj := obj.(type) {
	case *v1alpha1.HAGroup:
		obj.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("HAGroup"))
	case *v1alpha1.HAGroupList:
		obj.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("HAGroupList"))
		for i := range obj.Items {
			obj.Items[i].SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("HAGroup"))
		}
	}
	return p.PrintObj(obj, w)
}

// getGroup reads one HAGroup.
func getGroup(ctx context.Context, c client.Client, ns, name string) (*v1alpha1.HAGroup, error) {
	var g v1alpha1.HAGroup
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &g); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &groupNotFound{ns: ns, name: name, err: err}
		}
		return nil, explain(err)
	}
	return &g, nil
}

// groupNotFound names the namespace a group was looked for in: the usual
// cause is a missing -n. It wraps the API's error, so apierrors.IsNotFound
// still tells it.
type groupNotFound struct {
	ns, name string
	err      error
}

func (e *groupNotFound) Error() string {
	return fmt.Sprintf("hagroup %q not found in namespace %q", e.name, e.ns)
}

func (e *groupNotFound) Unwrap() error { return e.err }
