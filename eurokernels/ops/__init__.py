"""Public ops. Each module: public function + checks, torch.library registration, fake impl, autograd, dispatch."""
