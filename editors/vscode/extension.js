// The specc extension: the .spec language (grammar, brackets, comments) comes from
// package.json; this file starts the language server, `specc lsp`, over stdio. The server
// gives diagnostics (parse, name and shape errors as `specc check` reports them), hover,
// completion, go to definition, document symbols and formatting (`specc fmt`).
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("specc");
  const command = config.get("server.command", "specc");
  const args = config.get("server.args", ["lsp"]);
  const run = { command, args, transport: TransportKind.stdio };
  const serverOptions = { run, debug: run };
  const clientOptions = {
    documentSelector: [{ scheme: "file", language: "specc" }, { scheme: "untitled", language: "specc" }],
    synchronize: {
      // imported specs and plugins: a change to one rechecks the specs that use it
      fileEvents: vscode.workspace.createFileSystemWatcher("**/*.{spec,py}"),
    },
  };
  client = new LanguageClient("specc", "specc", serverOptions, clientOptions);
  client.start().catch((err) => {
    vscode.window.showErrorMessage(
      `specc: could not start \`${command} ${args.join(" ")}\` (${err.message}). ` +
        "Install specc with its language server (pip install 'specc[lsp]') or set specc.server.command."
    );
  });
  context.subscriptions.push({ dispose: () => client && client.stop() });
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
