-- specc in Neovim (0.7 or later), through its built-in LSP client: diagnostics as you
-- type, hover (K), go to definition, completion (omnifunc: <C-x><C-o>), formatting.
-- Load it from your init.lua (`dofile("/path/to/editors/nvim/specc.lua")`) or try it with
-- `nvim -u editors/nvim/specc.lua net.spec`. `specc` must be on PATH with the lsp extra
-- (pip install 'specc[lsp]'); set vim.g.specc_cmd to run another command.

vim.api.nvim_create_autocmd({ "BufRead", "BufNewFile" }, {
  pattern = "*.spec",
  callback = function() vim.bo.filetype = "specc" end,
})

local client_id -- one server for every spec buffer: it rechecks importers on any change

vim.api.nvim_create_autocmd("FileType", {
  pattern = "specc",
  callback = function(args)
    if client_id == nil or vim.lsp.get_client_by_id(client_id) == nil then
      client_id = vim.lsp.start_client({
        name = "specc",
        cmd = vim.g.specc_cmd or { "specc", "lsp" },
        root_dir = vim.fn.getcwd(),
      })
    end
    vim.lsp.buf_attach_client(args.buf, client_id)
    vim.bo[args.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
    vim.keymap.set("n", "K", vim.lsp.buf.hover, { buffer = args.buf })
    vim.keymap.set("n", "gd", vim.lsp.buf.definition, { buffer = args.buf })
  end,
})
