"""What only the course's notebooks need: the hyperparameter explorer, the step-through, their
ipywidgets front ends, and the earlier attempt's mistakes reproduced on purpose. The only room of the
package that imports ipywidgets; nothing in the core library imports this package.

- :mod:`cllm.course.explorer`: the explorer's logic (settings, data, a training run), widget-free
- :mod:`cllm.course.stepthrough`: walk the forward and backward pass op by op
- :mod:`cllm.course.widgets`: the ipywidgets views of both
- :mod:`cllm.course.pitfalls`: the broken versions the course shows failing
"""
