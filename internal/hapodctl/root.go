package hapodctl

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hapod/hapod/api/v1alpha1"
)

// FieldManager names the plugin's writes in managedFields, so that a
// user (or the controller's engineer) can tell a switchover or pause asked
// for with kubectl hapod from one written by hand.
const FieldManager = "kubectl-hapod"

// scheme holds the types the plugin reads and writes: HAGroup, and the
// built-in Pods and Events (events.k8s.io/v1) that history and switchover
// look at.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// options is what every subcommand shares: the connection flags and the
// streams.
type options struct {
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
}

// Run runs kubectl hapod with args (without the program name) and returns
// its error, to be printed by the caller as one line (see [OneLine]).
func Run(ctx context.Context, args []string, streams genericiooptions.IOStreams) error {
	cmd := NewCommand(streams)
	cmd.SetArgs(args)
	return cmd.ExecuteContext(ctx)
}

// OneLine is err as the single line kubectl hapod prints on stderr: an API
// server's message may hold newlines (a validation error lists its causes),
// and a caller's script should get one line per failure.
func OneLine(err error) string { return oneLine(err.Error()) }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// NewCommand builds the kubectl hapod command tree on streams.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{flags: genericclioptions.NewConfigFlags(true), streams: streams}
	root := &cobra.Command{
		Use:   "kubectl-hapod",
		Short: "Show and steer hapod's HAGroups: the active pod, its standbys, failovers and planned switchovers",
		Long: "kubectl hapod shows what the hapod controller reports in an HAGroup's status and asks it,\n" +
			"through the HAGroup's spec, for a planned switchover or a pause. The controller does the work;\n" +
			"the plugin never touches pods or labels.",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl hapod"},
		// main prints the error as one line; cobra's own printing would
		// add the usage text to every API error.
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	root.SetIn(streams.In)
	o.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		newStatusCommand(o),
		newSwitchoverCommand(o),
		newPauseCommand(o, true),
		newPauseCommand(o, false),
		newHistoryCommand(o),
	)
	return root
}

// namespace is the namespace of -n, else the kubeconfig context's, else
// default, as kubectl chooses it.
func (o *options) namespace() (string, error) {
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// client connects to the cluster of the connection flags.
func (o *options) client() (client.Client, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	// The API server's warnings (a deprecated field, say) go to stderr as
	// kubectl prints them, not into controller-runtime's logger, which a
	// CLI never sets up.
	cfg.WarningHandlerWithContext = nil
	cfg.WarningHandler = rest.NewWarningWriter(o.streams.ErrOut, rest.WarningWriterOptions{Deduplicate: true})
	return client.New(cfg, client.Options{Scheme: scheme})
}

// explain turns the API errors a user can act on into a sentence that says
// what to do.
func explain(err error) error {
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("the cluster does not serve HAGroups (%s): install the CRD with kubectl apply -k deploy/crd", v1alpha1.GroupVersion)
	}
	return err
}
